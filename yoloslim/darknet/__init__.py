"""The Darknet format: .cfg text and sections, the table of layer kinds."""
