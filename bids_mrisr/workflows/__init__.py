"""bids_mrisr.workflows."""
