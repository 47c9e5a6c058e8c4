"""What operators read and run: the installation's status, Prometheus metrics, key
rotation."""
