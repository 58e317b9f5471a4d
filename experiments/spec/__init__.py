"""What a sweep asks for: workload profiles and their SLOs, arrival and trace sections, the sweep grid."""
