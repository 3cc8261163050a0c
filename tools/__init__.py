"""Command-line tools of the collection (python-fire): verify, bench, and more to come."""
