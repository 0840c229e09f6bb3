"""Design-space search: enumeration, rate matching, Pareto frontiers and the recommendation."""

from pdplanner.planner.search.recommend import plan

__all__ = ["plan"]
