"""Elastic scaling: schedules over a traffic series, and runtime rate matching.

traffic      the series format (CSV/JSON, request logs bucketed into intervals)
forecast     a horizon forecast from a history (statsmodels ETS or SARIMA-style)
capacity     what one worker of a fixed configuration serves at the SLO
schedule     per-interval worker counts and shapes, events, totals, violations
replay       the seam to the event simulation: spans of workers + arrivals -> TTFT/TPOT
replaykernel the open-loop event simulation of a disaggregated deployment (Numba)
ratematch    target worker counts for the traffic of the moment (observed/predicted)
"""
