"""bids_mrisr.sr.diffusion."""
