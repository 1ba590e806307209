"""Security events: refused credentials and failed logins, counted flood-proof, shown in the admin and on the
dashboard. Above `projects` and `tokens` (an event names the token or project it concerns), below the proxy and the
management API, which record them.
"""
