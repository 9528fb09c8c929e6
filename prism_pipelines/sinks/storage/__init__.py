"""Archives: local folder, S3, Azure Blob, GCS. ``base`` holds everything they share (layout,
encoding, the exactly-once rule); each provider module only puts, removes and names an object.
"""
