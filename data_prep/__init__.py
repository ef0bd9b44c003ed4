"""CTC TIFF sequences -> chunked zarr v3 stores plus a Parquet frame index. No torch here."""
