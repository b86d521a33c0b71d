"""What happens to a stack: plan, up, status, resize, down, health, backups, smoke tests, the sweep."""
