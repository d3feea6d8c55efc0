"""The judges that turn replies into rates: unsafe, RoT agreement, preachiness, profanity.
"""
