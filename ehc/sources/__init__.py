"""What is probed and what is written: one module per kind of watched object."""
