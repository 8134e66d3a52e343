"""Running a job: its federation, simulation (simulate.py), serving (serve.py) and joining (join.py)."""
