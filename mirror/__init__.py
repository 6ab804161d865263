"""mirror: pre-fetch the results of a butler query into a local repository for offline work."""
