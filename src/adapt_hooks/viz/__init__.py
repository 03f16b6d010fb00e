"""Pictures and reports of a guarded run: anchor heat maps, the VE image and the drift table."""
