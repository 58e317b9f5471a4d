"""What results mean: trial metrics, Pareto frontiers, capacities, the one recommendation."""
