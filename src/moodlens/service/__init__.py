"""``moodlens serve``: uploads and a watch folder become durable jobs, worker processes run
the same pipeline as ``moodlens analyze``, and a console, a JSON API and Prometheus metrics
show them. The database holds every job and token: a process may die at any moment and a
restart resumes from the rows.
"""
