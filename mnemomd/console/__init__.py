"""The web console: static files served at ``/console/`` by every process with the API."""
