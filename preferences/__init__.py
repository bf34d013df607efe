"""Recipients' contact points, devices and preference documents, with their REST API and cache."""
