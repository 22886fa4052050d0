"""Configuration: every COS_* variable, parsed and validated into typed settings."""
