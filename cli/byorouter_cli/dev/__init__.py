"""`byorouter dev` and the `Stack` behind it: the whole of BYORouter on one machine."""
