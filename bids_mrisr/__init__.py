"""bids_mrisr: a BIDS-App that super-resolves brain MRI (MoEDiff-SR teacher, distilled student)."""

__version__ = "0.1.0"
