"""The Locust load: arrival schedules, shapes, the locustfile and the process driver.

Only :mod:`experiments.load.schedule`, :mod:`experiments.load.records` and
:mod:`experiments.load.driver` may be imported outside the Locust process.
"""
