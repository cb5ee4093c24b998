$named = [ordered]@{
    given_name = 'givenName'; surname = 'sn'; display_name = 'displayName'; title = 'title'; department = 'department'
    company = 'company'; office = 'physicalDeliveryOfficeName'; office_phone = 'telephoneNumber'; mobile_phone = 'mobile'
    employee_id = 'employeeID'; description = 'description'; street_address = 'streetAddress'; city = 'l'; state = 'st'; postal_code = 'postalCode'
}
$rawAllowed = @('msExchHideFromAddressLists', 'employeeType', 'employeeNumber', 'info', 'extensionAttribute1', 'extensionAttribute2', 'extensionAttribute3', 'extensionAttribute4', 'extensionAttribute5', 'extensionAttribute6', 'extensionAttribute7', 'extensionAttribute8', 'extensionAttribute9', 'extensionAttribute10', 'extensionAttribute11', 'extensionAttribute12', 'extensionAttribute13', 'extensionAttribute14', 'extensionAttribute15')
$wanted = New-Object System.Collections.ArrayList
foreach ($section in @('attributes', 'replace')) {
    if (-not (Test-StewardValue $section)) { continue }
    foreach ($prop in (Get-StewardValue $section).PSObject.Properties) {
        if ($section -eq 'attributes') {
            if (-not $named.Contains($prop.Name)) { throw ('Steward does not know the attribute ' + $prop.Name + '.') }
            $ldap = $named[$prop.Name]
        } else {
            if ($rawAllowed -notcontains $prop.Name) { throw ('Steward does not change the AD attribute ' + $prop.Name + '.') }
            $ldap = $prop.Name
        }
        $null = $wanted.Add([ordered]@{ section = $section; name = $prop.Name; ldap = $ldap; value = $prop.Value })
    }
}
if ($wanted.Count -eq 0) { throw 'Nothing to change: give attributes or replace.' }
$user = Get-StewardAdUser -Identity ([string]$p.identity)
$current = Get-ADUser @StewardAd -Identity ([string]$user.DistinguishedName) -Properties @($wanted | ForEach-Object { $_.ldap })
$StewardPrior = [ordered]@{ attributes = [ordered]@{}; replace = [ordered]@{} }
$replace = @{}
$clear = @()
foreach ($w in $wanted) {
    $now = $current.($w.ldap)
    if ($now -is [System.Collections.ICollection] -and -not ($now -is [string])) { $now = @($now)[0] }
    $StewardPrior[$w.section][$w.name] = $now
    if ($null -eq $w.value -or [string]$w.value -eq '') {
        if ($null -ne $now -and [string]$now -ne '') { $clear += $w.ldap }
    } elseif ([string]$now -cne [string]$w.value) {
        $replace[$w.ldap] = $w.value
    }
}
if ($replace.Count -eq 0 -and $clear.Count -eq 0) {
    return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardAdUser $user) -Prior $StewardPrior)
}
$params = @{}
if ($replace.Count -gt 0) { $params['Replace'] = $replace }
if ($clear.Count -gt 0) { $params['Clear'] = $clear }
Set-ADUser @StewardAd -Identity ([string]$user.DistinguishedName) @params -Confirm:$false
$after = Get-StewardAdUser -Identity ([string]$user.DistinguishedName)
return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardAdUser $after) -Prior $StewardPrior)
