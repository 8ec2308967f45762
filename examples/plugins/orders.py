"""Plugin used by the typed-call example: summarises an order passed as a dict."""


def summarize(order, discount=0.0):
    lines = []
    total = 0.0
    for item in order["items"]:
        amount = item["quantity"] * item["unit_price"]
        total += amount
        lines.append({"sku": item["sku"], "amount": round(amount, 2)})
    total *= 1.0 - discount
    return {
        "customer": order["customer"],
        "lines": lines,
        "total": round(total, 2),
        "big_order": total > 100,
    }
