"""`cartback import checkouts`: CSV files of checkouts, validated as the event API validates,
then applied through ingest in batches."""
