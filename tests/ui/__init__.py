"""Tests of the Streamlit UI and its HTTP client."""
