"""napari glue: layers <-> volumes, and the npe2 reader, writer and samples."""
