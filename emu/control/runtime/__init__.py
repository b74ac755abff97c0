"""Side effects live here: the Docker provider and image building."""
