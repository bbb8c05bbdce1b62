"""The Streamlit UI of medcbir and its typed HTTP client for the search API."""
