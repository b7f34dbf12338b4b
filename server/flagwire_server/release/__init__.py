"""Release automation: scheduled changes (``schedule.py`` pure rules, ``scheduler.py`` runner)."""
