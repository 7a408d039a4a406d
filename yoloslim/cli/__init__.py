"""What the command lines share: argument and input checks, the prune front end."""
