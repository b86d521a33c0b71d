"""Who can reach and take over an instance: its admins (own SSH login, app account) and the trustees' recovery kit."""
