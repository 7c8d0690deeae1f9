"""`make bench`: kubeca beside the HSM's raw rate and beside cfssl, in one run."""
