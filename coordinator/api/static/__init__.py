"""The dashboard page and its script and style, served as files (a package so that wheels include them)."""
