"""The RQ worker side: jobs that parse batches, process image chunks and deliver webhooks."""
