"""The observer: periodic jobs of SPEC §8, one module per job."""
