"""bids_mrisr.sr.networks."""
