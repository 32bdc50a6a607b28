"""Reading scans and writing label maps, with their geometry."""
