"""What CTU-UHB records must meet: the source's listing and the record-level checks."""
