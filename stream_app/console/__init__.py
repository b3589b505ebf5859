"""The alert review console (`stream-app console`): a page where analysts claim alerts and give verdicts."""
