"""Resources shared by every concern: MongoDB, S3 and Slack."""
