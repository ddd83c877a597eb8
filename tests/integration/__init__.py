"""End-to-end tests: the pipeline's stages as separate processes on real S3 (SeaweedFS) and on local disk."""
