"""The end-to-end demo (`make demo`): python -m demo.run_demo."""
