"""Who can reach and take over an instance: its admins (own SSH login, app account), the trustees'
recovery kit, and the Covenant's check that it does not depend on one person."""
