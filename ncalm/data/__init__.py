"""Data: the NCA engine, Dyck, on-device sources, tokenisers and the text pipeline."""
