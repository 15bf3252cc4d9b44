"""Files shipped with the package: the bundled demo model and its card."""
