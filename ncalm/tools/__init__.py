"""Commands that are not the training run: NCA data export, pictures, the dry run."""
