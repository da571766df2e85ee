"""Benchmarks: command-line measurements that time fpjax and its baseline side by side."""
