"""stores/postgres"""
