from django import forms


class GrowForm(forms.Form):
    kib = forms.IntegerField(
        label="KiB of filler to add",
        min_value=1,
        max_value=1024,
        initial=16,
    )
