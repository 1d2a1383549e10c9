"""The napari plugin: everything here may import napari and Qt; the compute lives in the core."""
