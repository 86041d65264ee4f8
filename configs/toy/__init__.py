"""2-D toy experiment configs."""
