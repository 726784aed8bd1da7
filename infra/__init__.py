"""Infrastructure shared by the API and the worker: settings, MongoDB, S3, Redis queues."""
